FROM busybox
ENV PATHX=$PAHT
COPY $SRC /x
ARG later
ENV A=$later
COPY <<EOF /greeting
hello $later from $HOSTNAMEX
EOF
