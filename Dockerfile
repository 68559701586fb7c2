# llamarock's gateway image (deploy/helm/llamarock runs it): the server and its embedded model, installed by the
# project's own scripts/install from requirements/lock.txt. Build: docker build -t llamarock:0.1.0 .
FROM python:3.11-slim
# llama-cpp-python compiles llama.cpp from source.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/llamarock
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY scripts scripts
COPY llamarock llamarock
RUN scripts/install && useradd --system --home /var/lib/llamarock --create-home llamarock
ENV PATH=/opt/llamarock/.venv/bin:$PATH LLAMAROCK_DATA_DIR=/var/lib/llamarock
USER llamarock
EXPOSE 8080
ENTRYPOINT ["llamarock"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--auth", "enforce"]
