FROM busybox AS a
FROM busybox AS b
