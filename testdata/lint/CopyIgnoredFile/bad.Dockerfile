# check=experimental=CopyIgnoredFile
FROM busybox
COPY secret.key /x
ADD logs/app.log /y
COPY --from=busybox secret.key /z
