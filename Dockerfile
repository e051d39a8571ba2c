# xbench in a container. Not built on the development machines (they have no Docker engine); kept
# simple on purpose. The demo model is made at build time; mount your own model and pass its
# directory (model_pool.instances.0.name=/models/NAME) to serve another one.
#   docker build -t xbench . && docker run --rm -p 8080:8080 xbench
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*
COPY . .
RUN ./scripts/fetch_demo_model.sh && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/xbench /usr/local/bin/xbench
COPY --from=build /src/conf ./conf
COPY --from=build /src/models ./models
EXPOSE 8080
HEALTHCHECK CMD curl -fsS http://127.0.0.1:8080/health || exit 1
CMD ["xbench", "serve", "server.host=0.0.0.0"]
