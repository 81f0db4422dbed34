FROM busybox AS base
CMD ["a"]
FROM base
CMD ["b"]
