"""STAND-IN alias: newer core versions spell the package `arnold_pipelines`."""
