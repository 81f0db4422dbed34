FROM busybox AS a
RUN true
From busybox as b
