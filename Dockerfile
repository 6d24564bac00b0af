# syntax=docker/dockerfile:1
# Sidecar as a NativeAOT binary on a chiseled runtime-deps base: no shell, no package manager, no .NET runtime (the
# binary carries its own), a non-root user. Build: docker build -t sidecar:dev .
# The default command reads /etc/sidecar/sidecar.json (deploy/k8s mounts it from a ConfigMap); a config for a
# container listens on 0.0.0.0 (with allowedHosts) to be reachable from outside it:
#   docker run --rm -p 127.0.0.1:8787:8787 -v "$PWD/config:/etc/sidecar:ro" sidecar:dev

# The build stage and the final base are the same Ubuntu release (noble): a NativeAOT binary links against the
# build image's glibc and must not need a newer one than the base it runs on.
FROM mcr.microsoft.com/dotnet/sdk:10.0-noble AS build
# NativeAOT links with clang against zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
# BuildKit sets TARGETARCH (amd64, arm64); without it, x64.
ARG TARGETARCH
WORKDIR /src
# Restore first, from the project files alone, so that a source change does not download the packages again.
COPY global.json Directory.Build.props Directory.Packages.props ./
COPY src/Sidecar/Sidecar.csproj src/Sidecar/
COPY src/Sidecar.Core/Sidecar.Core.csproj src/Sidecar.Core/
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo linux-x64 ;; \
      arm64) echo linux-arm64 ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rid \
    && dotnet restore src/Sidecar/Sidecar.csproj -r "$(cat /rid)"
COPY src/ src/
# PublishAot is on in src/Sidecar/Sidecar.csproj; any trim or AOT warning is an error (Directory.Build.props).
RUN dotnet publish src/Sidecar -c Release -r "$(cat /rid)" --no-restore -o /out

FROM mcr.microsoft.com/dotnet/runtime-deps:10.0-noble-chiseled
# Only the binary (its stripped symbols, sidecar.dbg, stay behind).
COPY --from=build /out/sidecar /app/sidecar
# The chiseled image's non-root "app" user, by number, so that Kubernetes' runAsNonRoot can verify it.
USER 1654:1654
WORKDIR /app
EXPOSE 8787
ENTRYPOINT ["/app/sidecar"]
CMD ["run", "--config", "/etc/sidecar/sidecar.json"]
