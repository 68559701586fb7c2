"""Query-side text handling for the lexical (BM25) index, shared by both stores.

Documents are indexed by the store's own tokenizer (SQLite FTS5 ``porter unicode61``; PostgreSQL ``english``
text search). Queries are reduced to their words, without English stopwords, OR-ed together: BM25 ranks documents
matching more (and rarer) words higher, as Lucene's and bm25s' default query parsing does.
"""

from __future__ import annotations

import re

# The English stopword list of scikit-learn / bm25s' default ("en"), which the published BM25 baselines use.
STOPWORDS = frozenset(
    """a about above across after afterwards again against all almost alone along already also although always am
    among amongst amoungst amount an and another any anyhow anyone anything anyway anywhere are around as at back be
    became because become becomes becoming been before beforehand behind being below beside besides between beyond
    bill both bottom but by call can cannot cant co con could couldnt cry de describe detail do done down due during
    each eg eight either eleven else elsewhere empty enough etc even ever every everyone everything everywhere except
    few fifteen fifty fill find fire first five for former formerly forty found four from front full further get
    give go had has hasnt have he hence her here hereafter hereby herein hereupon hers herself him himself his how
    however hundred i ie if in inc indeed interest into is it its itself keep last latter latterly least less ltd
    made many may me meanwhile might mill mine more moreover most mostly move much must my myself name namely neither
    never nevertheless next nine no nobody none noone nor not nothing now nowhere of off often on once one only onto
    or other others otherwise our ours ourselves out over own part per perhaps please put rather re same see seem
    seemed seeming seems serious several she should show side since sincere six sixty so some somehow someone
    something sometime sometimes somewhere still such system take ten than that the their them themselves then thence
    there thereafter thereby therefore therein thereupon these they thick thin third this those though three through
    throughout thru thus to together too top toward towards twelve twenty two un under until up upon us very via was
    we well were what whatever when whence whenever where whereafter whereas whereby wherein whereupon wherever
    whether which while whither who whoever whole whom whose why will with within without would yet you your yours
    yourself yourselves""".split()
)

_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(text: str, limit: int = 64) -> list[str]:
    """The distinct lower-cased words of a query, stopwords dropped (all kept if nothing else is left)."""
    words = [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w.strip("_")]
    kept = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(kept))[:limit]


def fts5_query(text: str) -> str | None:
    """An FTS5 MATCH expression: each term quoted (no FTS5 syntax from the user survives), OR-ed."""
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
