# One portal-es node (docker-compose.yml runs three). The kernel data plane is nftables
# (libnftables through its JSON API); the container needs NET_ADMIN (and NET_RAW for the
# gratuitous ARP of vips): see docker-compose.yml.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables libnftables1 iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY portal_es portal_es
COPY projections projections
COPY migrations migrations
RUN pip install --no-cache-dir . && rm -rf /src
ENV PORTAL_ES_WORK_DIR=/var/lib/portal-es
VOLUME /var/lib/portal-es
EXPOSE 8443 80 443
ENTRYPOINT ["portal-es"]
CMD ["serve"]
