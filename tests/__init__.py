"""The tests mirror the packages of `proxy/`: tests/<package>/ holds the tests of proxy/<package>/ (the policy
tables in tests/policy/, the Redis tier in tests/cache/redis/, ...), each folder's docstring says what runs there.
Here at the top sit the tests of the top-level modules (`sidecache` as a command, start-up errors) and of the
repository as a whole (the docs, the import layers, the deployment examples). What tests share lives in
conftest.py (fixtures) and support/ (helpers); a test module imports those, never another test module.
"""
