# syntax=docker/dockerfile:1
# One multi-stage file for every service image (docker-compose.yml builds each
# with its own CMD):
#   docker build --build-arg CMD=./consumer/cmd/usage-consumer -t usagemeter/usage-consumer .
# The build stage compiles one static binary (CGO off) and the health-check
# helper; the runtime image is distroless static (no shell, no package
# manager, ~2 MB) running as the non-root user 65532. The example configs the
# demo's commands name are copied to the same relative paths under /app.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY . .
# In the workspace (its replaces join the sibling modules); only CMD is built.
ARG CMD
RUN test -n "$CMD" || { echo "build with --build-arg CMD=./<component>/cmd/<name>"; exit 1; }
RUN --mount=type=cache,target=/root/.cache/go-build --mount=type=cache,target=/go/pkg/mod \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/service "$CMD" && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/usage-healthcheck ./svckit/cmd/usage-healthcheck && \
    mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
WORKDIR /app
COPY --from=build /src/schemas/plans/plans.example.yaml schemas/plans/plans.example.yaml
COPY --from=build /src/billing-sync/config.demo.yaml billing-sync/config.demo.yaml
COPY --from=build /src/api/keys.example.yaml api/keys.example.yaml
COPY --from=build /out/service /usr/local/bin/service
COPY --from=build /out/usage-healthcheck /usr/local/bin/usage-healthcheck
# The one writable place (a volume in docker-compose.yml): the fake Stripe's journal.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/service"]
