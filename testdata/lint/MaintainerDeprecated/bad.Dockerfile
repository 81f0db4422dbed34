FROM busybox
MAINTAINER me <me@example.com>
