FROM busybox
CMD echo hi
ENTRYPOINT run it
