FROM busybox
WORKDIR app
WORKDIR sub
