"""IVLE's media version: the value in ivle.conf that names its static files.

- version: choose the next value and write it into ivle.conf, touching
  nothing else in the file.
"""
