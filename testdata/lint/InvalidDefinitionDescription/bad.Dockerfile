# check=experimental=InvalidDefinitionDescription
# a comment that describes nothing
ARG VERSION=1
# the build stage
FROM busybox AS build
