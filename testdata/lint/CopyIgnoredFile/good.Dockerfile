# check=experimental=CopyIgnoredFile
FROM busybox
COPY app.txt /x
COPY . /src
