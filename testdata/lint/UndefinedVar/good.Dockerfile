FROM busybox AS base
ARG FOO
ENV BAR=$FOO P=$PATH
FROM base
COPY ${FOO} /x
