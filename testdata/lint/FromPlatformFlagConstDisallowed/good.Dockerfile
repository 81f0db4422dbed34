FROM --platform=linux/amd64 busybox AS build_amd64
FROM --platform=linux/amd64 busybox AS linux
FROM --platform=$BUILDPLATFORM busybox
