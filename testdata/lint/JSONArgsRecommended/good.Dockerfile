FROM busybox AS base
SHELL ["/bin/sh", "-c"]
FROM base
CMD echo hi
