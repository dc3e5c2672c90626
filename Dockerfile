# orchestrate in a small image: the binary, built with libpq and the MySQL client library
# inside it (`--features bundled`), on Debian slim with OpenSSL's libraries.
#   docker build -t orchestrate .
#   docker run --rm --network host -v "$PWD:/project" orchestrate status
# The project folder (config/, migrations/, var/) is mounted at /project, the working folder.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev cmake libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo install --locked --path crates/orchestrator --features bundled --root /out

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 libstdc++6 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bin/orchestrate /usr/local/bin/orchestrate
WORKDIR /project
ENTRYPOINT ["orchestrate"]
CMD ["--help"]
