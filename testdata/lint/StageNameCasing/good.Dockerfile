FROM busybox AS build-stage
RUN true
