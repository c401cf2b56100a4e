"""Helpers the tests share: fakes, child "kernels", servers, the browser driver.

They live in this package, under a name no published distribution takes, so an
installed package never finds one of them in its place (pytest puts ``tests/`` first
on ``sys.path``); ``tests/test_structure.py`` checks that nothing there shadows one.
"""
