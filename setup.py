# Shim for tools that still look for setup.py; everything is in setup.cfg.
from setuptools import setup

setup()
