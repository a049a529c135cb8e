"""Inventory files: Ansible-style INI and YAML read into RemoteTargets, and --limit selection."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from kensa.errors import InventoryError
from kensa.inventory import load_inventory, parse_inventory, select_hosts
from kensa.model import InventoryHost, RemoteTarget

INI = """\
mail.example.com

[web]
web[01:03].example.com ansible_user=ops
db1 ansible_host=10.0.0.5 ansible_port=2222 kensa_root=/srv/db1  # the database

[prod:children]
web

[prod:vars]
ansible_ssh_private_key_file = "/etc/kensa/id key"
ansible_user=root

[all:vars]
ansible_port=22
"""

YAML = """\
all:
  vars:
    ansible_port: 22
  hosts:
    mail.example.com:
  children:
    prod:
      vars:
        ansible_ssh_private_key_file: /etc/kensa/id key
        ansible_user: root
      children:
        web:
          hosts:
            web[01:03].example.com:
              ansible_user: ops
            db1: {ansible_host: 10.0.0.5, ansible_port: 2222, kensa_root: /srv/db1}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def names(hosts: List[InventoryHost]) -> List[str]:
    return [host.name for host in hosts]


def test_ini_inventory_gives_targets_with_ansible_precedence(tmp_path: Path) -> None:
    """Host vars beat group vars, child groups beat parents, all:vars is the default; ranges expand with their width."""
    hosts = load_inventory(write(tmp_path, "hosts.ini", INI))
    assert names(hosts) == ["mail.example.com", "web01.example.com", "web02.example.com", "web03.example.com", "db1"]
    assert hosts[0].target == RemoteTarget("mail.example.com", port=22)
    assert hosts[0].groups == ("ungrouped",)
    assert hosts[1].target == RemoteTarget("web01.example.com", "ops", 22, "/", "/etc/kensa/id key")
    assert hosts[1].groups == ("web", "prod")
    assert hosts[4].target == RemoteTarget("10.0.0.5", "root", 2222, "/srv/db1", "/etc/kensa/id key")
    assert hosts[4].target.key == "ssh://root@10.0.0.5:2222/srv/db1"


def test_yaml_inventory_reads_the_same_as_its_ini_twin(tmp_path: Path) -> None:
    """The YAML form of the same fleet gives the same targets (groups order aside) and is told by its content."""
    from_ini = load_inventory(write(tmp_path, "hosts.ini", INI))
    from_yaml = load_inventory(write(tmp_path, "hosts", YAML))
    assert [host.target for host in from_yaml] == [host.target for host in from_ini]
    assert from_yaml[1].groups == ("prod", "web")


def test_a_host_in_several_groups_is_listed_once_with_all_its_groups(tmp_path: Path) -> None:
    """De-duplication: one entry per host, in first-declared order, groups merged, later host vars merged in."""
    text = "[a]\nh1\nh2 ansible_port=2200\n[b]\nh2 ansible_user=ops\nh1\n"
    hosts = load_inventory(write(tmp_path, "i.ini", text))
    assert names(hosts) == ["h1", "h2"]
    assert hosts[1].groups == ("a", "b")
    assert hosts[1].target == RemoteTarget("h2", "ops", 2200)


def test_two_names_for_one_target_with_other_login_settings_are_refused(tmp_path: Path) -> None:
    """Two inventory names that reach the same ssh://key with different keys files would be one target run twice."""
    text = "[a]\nx ansible_host=10.0.0.1 ansible_ssh_private_key_file=/k1\ny ansible_host=10.0.0.1 ansible_ssh_private_key_file=/k2\n"
    with pytest.raises(InventoryError, match=r"i.ini:3: host 'y' is the same target as host 'x'"):
        load_inventory(write(tmp_path, "i.ini", text))


def test_the_same_target_under_two_names_is_kept_once(tmp_path: Path) -> None:
    """Two names for the same target and login: one entry, the first name."""
    text = "[a]\nx ansible_host=10.0.0.1\ny ansible_host=10.0.0.1\n"
    assert names(load_inventory(write(tmp_path, "i.ini", text))) == ["x"]


def test_ranges_expand_letters_steps_and_several_brackets() -> None:
    """web[a:c], [1:9:4] and two ranges in one name expand as Ansible does."""
    hosts = parse_inventory(b"[g]\nn[a:b]-[1:9:4]\n", "r.ini")
    assert names(hosts) == ["na-1", "na-5", "na-9", "nb-1", "nb-5", "nb-9"]


def test_limit_selects_groups_and_hosts_in_inventory_order(tmp_path: Path) -> None:
    """--limit takes groups and host names, comma or colon separated; 'all' is everyone."""
    hosts = load_inventory(write(tmp_path, "hosts.ini", INI))
    assert names(select_hosts(hosts, "db1,ungrouped")) == ["mail.example.com", "db1"]
    assert names(select_hosts(hosts, "prod")) == names(hosts)[1:]
    assert names(select_hosts(hosts, "all")) == names(hosts)


def test_limit_naming_nothing_known_is_an_error(tmp_path: Path) -> None:
    """A typo in --limit is refused, naming the inventory, instead of selecting no host."""
    path = write(tmp_path, "hosts.ini", INI)
    with pytest.raises(InventoryError, match=r"hosts.ini has no host named 'prd'"):
        select_hosts(load_inventory(path), "web,prd", str(path))


@pytest.mark.parametrize(
    "text, where",
    [
        ("[web]\nh1\n[web:hosts]\nh2\n", r"i.ini:3: section '\[web:hosts\]'"),
        ("[web]\nh1 ansible_port=twenty\n", r"i.ini:2: ansible_port of host 'h1' is 'twenty', not a port"),
        ("[web]\nh1 ansible_port=70000\n", r"i.ini:2: ansible_port of host 'h1' is 70000, outside"),
        ("[web]\n-oProxyCommand=x\n", r"i.ini:2: host name '-oProxyCommand=x' is not usable"),
        ("[web]\nh1 ansible_host=-oProxyCommand=x\n", r"i.ini:2: host name '-oProxyCommand=x'"),
        ("[web]\nh1 ansible_user='a b'\n", r"i.ini:2: user name 'a b' is not usable"),
        ("[web]\nh1 kensa_root=srv\n", r"i.ini:2: kensa_root of host 'h1' is 'srv'; it must be an absolute path"),
        ("[web]\nh1 kensa_rot=/srv\n", r"i.ini:2: unknown variable 'kensa_rot'"),
        ("[web]\nh1 port\n", r"i.ini:2: 'port' is not a variable=value pair"),
        ("[web]\nh1 ansible_user='ops\n", r"i.ini:2: cannot read"),
        ("[a:children]\nb\n[b:children]\nc\n[c:children]\na\n", r"i.ini:6: groups are their own descendants \(a -> b -> c -> a\)"),
        ("[a:children]\na\n", r"i.ini:2: groups are their own descendants \(a -> a\)"),
        ("[a:children]\nall\n", r"i.ini:2: group 'all' cannot be a child"),
        ("[web]\nh[9:1]\n", r"i.ini:2: range in 'h\[9:1\]' ends before it starts"),
        ("[web]\nh[1:999999]\n", r"i.ini:2: 'h\[1:999999\]' expands to more than"),
    ],
)
def test_bad_ini_is_an_error_at_file_line(tmp_path: Path, text: str, where: str) -> None:
    """Each malformed INI inventory is refused with an InventoryError naming file:line and what is wrong."""
    with pytest.raises(InventoryError, match=where):
        load_inventory(write(tmp_path, "i.ini", text))


@pytest.mark.parametrize(
    "text, where",
    [
        ("all:\n  hosts:\n    h1:\n      ansible_port: '22x'\n", r"i.yml:4: ansible_port of host 'h1' is '22x'"),
        ("all:\n  hosts:\n    h1:\n      ansible_port: [22]\n", r"i.yml:4: ansible_port of host 'h1' is \[22\]"),
        ("all:\n  host:\n    h1:\n", r"i.yml:2: group 'all' has 'host'; a group holds only hosts, vars, children"),
        ("all:\n  hosts:\n    'bad host':\n", r"i.yml:3: host name 'bad host' is not usable"),
        ("all:\n  hosts: [h1]\n", r"i.yml:2: hosts of group 'all' must be a mapping"),
        ("all:\n  children:\n    a:\n      children:\n        a:\n", r"i.yml:5: groups are their own descendants \(a -> a\)"),
        ("all:\n  hosts:\n    h1: &x {}\n    h2: *x\n", r"i.yml:4: YAML alias"),
        ("- h1\n", r"i.yml:1: an inventory is a mapping of group names"),
    ],
)
def test_bad_yaml_is_an_error_at_file_line(tmp_path: Path, text: str, where: str) -> None:
    """Each malformed YAML inventory is refused with an InventoryError naming file:line and what is wrong."""
    with pytest.raises(InventoryError, match=where):
        load_inventory(write(tmp_path, "i.yml", text))


def test_other_tools_variables_are_left_alone(tmp_path: Path) -> None:
    """An inventory shared with Ansible keeps its own variables (lists, mappings, any ansible_*): kensa ignores them."""
    text = "all:\n  hosts:\n    h1:\n      ntp_servers: [a, b]\n      ansible_become: true\n"
    assert load_inventory(write(tmp_path, "i.yml", text))[0].target == RemoteTarget("h1")


def test_an_unreadable_inventory_is_an_error_naming_it(tmp_path: Path) -> None:
    """A missing file is an InventoryError with its path, not a bare OSError."""
    with pytest.raises(InventoryError, match=r"nothere.ini: cannot read the inventory"):
        load_inventory(tmp_path / "nothere.ini")


def test_a_child_groups_vars_beat_its_parents_whatever_the_order_of_sections(tmp_path: Path) -> None:
    """Precedence goes by depth from 'all', not by where a section is written; siblings go by name."""
    text = (
        "[child:vars]\nansible_user=from-child\n"
        "[parent:children]\nchild\n"
        "[parent:vars]\nansible_user=from-parent\nansible_port=2200\n"
        "[child]\nh1\n[b]\nh1\n[a]\nh1\n[a:vars]\nkensa_root=/a\n[b:vars]\nkensa_root=/b\n"
    )
    (host,) = load_inventory(write(tmp_path, "i.ini", text))
    assert host.target == RemoteTarget("h1", "from-child", 2200, "/b")


PYTHON_INI = """\
db1 ansible_python_interpreter=/opt/py/bin/python3
db2 kensa_python=/usr/libexec/platform-python ansible_python_interpreter=/usr/bin/python3.6
db3
web1
edge1 ansible_python_interpreter=auto_silent

[db]
db1
db2
db3

[db:vars]
ansible_python_interpreter=/usr/bin/python3.9

[all:vars]
ansible_python_interpreter=/usr/bin/python3
"""


def test_the_python_interpreter_comes_from_kensa_python_or_ansible_python_interpreter(tmp_path: Path) -> None:
    """kensa_python and ansible_python_interpreter set target.python: host over group over all:vars,
    kensa_python over Ansible's spelling on one host; Ansible's discovery modes ("auto...") leave it to kensa's search."""
    hosts = {h.name: h.target.python for h in load_inventory(write(tmp_path, "hosts.ini", PYTHON_INI))}
    assert hosts == {"db1": "/opt/py/bin/python3", "db2": "/usr/libexec/platform-python", "db3": "/usr/bin/python3.9",
                     "web1": "/usr/bin/python3", "edge1": None}
    yaml = "all:\n  hosts:\n    web1: {kensa_python: /usr/bin/python3}\n    web2:\n"
    assert [h.target.python for h in load_inventory(write(tmp_path, "hosts.yml", yaml))] == ["/usr/bin/python3", None]


@pytest.mark.parametrize("value", ["python3", "/usr/bin/env python3", "{{ discovered }}"])
def test_an_interpreter_that_is_not_an_absolute_path_is_refused_at_its_line(tmp_path: Path, value: str) -> None:
    """A relative interpreter (looked up on PATH), one with arguments, or a template is an InventoryError at file:line."""
    text = f"[web]\nweb1\n\n[web:vars]\nansible_python_interpreter={value}\n"
    with pytest.raises(InventoryError, match=r"hosts.ini:5: the Python interpreter of host 'web1' .* must be an absolute path"):
        load_inventory(write(tmp_path, "hosts.ini", text))
