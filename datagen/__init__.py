"""Data-making code: the demo dataset's generator (its patents, rules and renderings) and the boundary cases
`train` augments with. Imports only schemas/.
"""
