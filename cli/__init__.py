"""The command line, `tunegate ...`: the top floor, above flows/ and deployments/ (cli/main.py).

    python -m cli run configs/demo.yaml     # the same as `tunegate run configs/demo.yaml`
"""
