FROM --platform=$BUILDPLATFORM busybox
