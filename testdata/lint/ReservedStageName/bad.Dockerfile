FROM busybox AS scratch
FROM busybox AS context
