FROM busybox
ENV A=1
LABEL b=2
