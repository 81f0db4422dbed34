FROM busybox AS scratchy
