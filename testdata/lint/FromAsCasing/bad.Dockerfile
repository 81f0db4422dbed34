FROM busybox as a
RUN true
from busybox AS b
run true
