"""python -m edgeship.cli"""

from edgeship.cli import main

main()
