# Sluice's container image for users with docker (docs/kubernetes.md). CI does not build
# this file (it has no registry to pull debian:12 from); it builds the same root
# filesystem without docker, with scripts/build-image.sh and umoci.
#
#   docker build -t sluice/sluice-agent:0.1.0 .
#
# Build stage: Debian 12 with the project's own dependency and build scripts. Runtime
# stage: nothing but what scripts/build-image.sh --rootfs-only collects — the agent,
# sluice-cni, sluicectl, install-cni.sh with bash/jq/coreutils, and exactly the shared
# libraries they load.
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN scripts/build.sh \
    && scripts/build-image.sh --rootfs-only build /out

FROM scratch
COPY --from=build /out/rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT ["/usr/local/bin/sluice-agent"]
