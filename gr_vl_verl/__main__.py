from gr_vl_verl.cli import entry

entry()
