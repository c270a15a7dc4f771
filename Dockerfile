# CPU image of a crossback node.
#   docker build -t crossback .                       torch from PyTorch's CPU index (the default)
#   docker build --build-arg TORCH_SOURCE=wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl -t crossback .
#                                                     a local wheel, copied into wheels/ first
#   docker build --build-arg TORCH_SOURCE=wheels --build-arg PIP_NO_INDEX=1 -t crossback .
#                                                     a complete wheelhouse in wheels/, no network index
#   --build-arg TORCH_SOURCE=https://mirror.example/whl/cpu, --build-arg PIP_INDEX_URL=...: mirrors
# See wheels/README.md and docker/install-torch.sh.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG TORCH_SOURCE=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_NO_INDEX=
ENV PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/src/wheels PATH=/opt/crossback/bin:$PATH
# Few layers on purpose: an engine on the vfs storage driver stores every layer as a full copy.
COPY docker/install-torch.sh /src/docker/
COPY wheels /src/wheels
# torch first (its own layer, kept while only crossback's sources change), so nothing below pulls a CUDA build
RUN [ -n "$PIP_NO_INDEX" ] || unset PIP_NO_INDEX; python -m venv /opt/crossback && sh /src/docker/install-torch.sh
COPY . /src
RUN [ -n "$PIP_NO_INDEX" ] || unset PIP_NO_INDEX; pip install /src && python -c "import crossback.app.cli"

# The node image: the virtual environment and the example configs, no build inputs (no wheels).
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 PATH=/opt/crossback/bin:$PATH
COPY --from=build /opt/crossback /opt/crossback
COPY examples /app/examples
WORKDIR /app
EXPOSE 50051 9100
ENTRYPOINT ["crossback"]
CMD ["--help"]
