import sys

from gr_vl_verl.cli import main

sys.exit(main())
