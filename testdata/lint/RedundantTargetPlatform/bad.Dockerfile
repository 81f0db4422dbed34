FROM --platform=$TARGETPLATFORM busybox
FROM --platform=${TARGETPLATFORM} busybox
