# One image for every AutoCrane component: the `autocrane` binary, run with the component's
# subcommand (`autocrane watchdog-listener`, `autocrane version-watcher`, ...).
# Build: docker build -t autocrane:dev .   (needs a Docker engine; none runs on the dev machines)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p autocrane && strip target/release/autocrane

FROM debian:bookworm-slim
# git: the VersionWatcher and DataRepository read git sources with the git CLI.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/autocrane /usr/local/bin/autocrane
# Non-root by default; the data deployer needs write access only to its emptyDir volume.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/autocrane"]
CMD ["--help"]
