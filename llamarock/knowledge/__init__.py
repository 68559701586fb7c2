"""The retrieval library behind knowledge bases: parsers, chunking, metadata sidecars, filters, vector stores.

Pure-ish: no HTTP, no services. The stores do their own I/O (SQLite or PostgreSQL) and are synchronous and
thread-safe; callers on the event loop run them in a thread. The embedder is passed in (anything with the
``engines.embedding.Embedder`` interface), never imported from services.

    parsers.parse(name, data)              -> ParsedDocument (text, page offsets) or ParseError
    chunking.chunk(text, config, count)    -> list[Chunk] (character offsets into the text)
    metadata.parse_sidecar(data)           -> {key: str | number | bool | list[str]}
    filters.validate(filter)               -> ValueError naming what is wrong; compiled per store
    store.VectorStore                      -> SqliteVectorStore (sqlite_store), PgVectorStore (pg_store)
"""
