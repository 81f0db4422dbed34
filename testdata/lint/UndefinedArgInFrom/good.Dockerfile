ARG VERSION=1
ARG TAG
FROM busybox:${VERSION}
FROM busybox:${TAG:-latest}
FROM --platform=$BUILDPLATFORM busybox
