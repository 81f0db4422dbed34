FROM busybox AS BuildStage
RUN true
