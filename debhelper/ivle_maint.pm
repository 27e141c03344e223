#! /usr/bin/perl
# debhelper sequence file for dh_ivle_maint (dh --with ivle-maint, or the
# build dependency dh-sequence-ivle-maint).
#
# After dh_installsystemd (dh_installinit in compat 10, which has no
# dh_installsystemd): the position does not decide the order of the
# snippets (debhelper keeps dh_installinit's and dh_installsystemd's
# service snippets apart and puts them after every other snippet in the
# postinst, before them in the prerm and postrm), so ivle-maint's postinst
# lines always run before their start of ivle-usrmgt-server.  Running after
# both lets dh_ivle_maint read the snippets they generated and warn when
# either would restart ivle-usrmgt-server a second time.

use warnings;
use strict;
use Debian::Debhelper::Dh_Lib;

insert_after(compat(10) ? "dh_installinit" : "dh_installsystemd", "dh_ivle_maint");

1;
