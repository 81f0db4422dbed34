ARG VERSION=1
FROM busybox:${VERSIN}
FROM --platform=$BULIDPLATFORM busybox
