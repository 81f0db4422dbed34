FROM busybox
LABEL org.opencontainers.image.authors="me"
