FROM busybox
RUN true
run true
Copy a b
