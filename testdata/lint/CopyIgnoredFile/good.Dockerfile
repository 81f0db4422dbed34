FROM busybox
COPY app.txt /x
COPY . /src
