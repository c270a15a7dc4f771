# CPU image of a crossback node. Build: docker build -t crossback .
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# CPU PyTorch first, so nothing below pulls a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY models models
COPY data data
COPY node node
COPY orchestrator_free orchestrator_free
COPY transfer transfer
COPY bench bench
COPY examples examples
RUN pip install .
EXPOSE 50051
ENTRYPOINT ["crossback"]
CMD ["--help"]
