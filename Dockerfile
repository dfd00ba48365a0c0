# The oncall-router image: Ray 2.60 (the project's ray pin and the rayVersion of platform/kuberay)
# with this repository installed the way the Makefile installs it, torch pinned first. One image
# for every pod of platform/kuberay (Ray heads and workers, RayJob submitters, the nightly's render
# step), named there by the placeholder registry.example.com/oncall-router:<version>.
#
#   docker build -t registry.example.com/oncall-router:0.1.0 .                 # CPU
#   docker build -t registry.example.com/oncall-router:0.1.0-gpu \
#     --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .      # CUDA (e.g. 12.8)
#
# tests/unit/test_image.py lints this file with hadolint and replays its COPY and RUN steps in a
# fresh virtualenv (Docker does not run in CI); it also keeps TORCH_SPEC equal to the Makefile's.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}

# CPU wheels by default: PyPI's torch for Linux is the multi-GB CUDA build. For the GPU image pass
# the PyTorch wheel index of the base image's CUDA version (and BASE_IMAGE=…-gpu).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /home/ray/oncall-router
# What `pip install .` needs (pyproject.toml names README.md as the readme), and platform/ so that
# `serve deploy platform/serve/serve_config.yaml` and the default config are at hand in the image.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users serve ./serve
COPY --chown=ray:users platform ./platform

# torch first and pinned, so the project's install finds it satisfied and never pulls another
# build; then the project; then the console script must answer (a broken install fails the build).
# DL3013: the pin is in TORCH_SPEC, which hadolint cannot read through the variable.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}" \
 && pip install --no-cache-dir . \
 && oncall-router --version
