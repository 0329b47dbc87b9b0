# The operator image: `docker build -t firebreak:0.1.0 .` (used by the Tiltfile).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY operator ./operator
RUN pip install --no-cache-dir --no-deps . && useradd --uid 10001 firebreak
USER 10001
ENTRYPOINT ["firebreak"]
