# check=experimental=InvalidDefinitionDescription
# VERSION is the tag
ARG VERSION=1
# unrelated comment
#
FROM busybox AS build
# build2 the second stage
FROM busybox AS build2
