-- Wireshark / tshark dissectors for canbridge traffic (Wireshark >= 3.x, checked with tshark 4.0.17).
--
--   canbridge   native protocol v1 (docs/protocol.md): TCP and UDP, default port 29600, plus a
--               heuristic on every port: a UDP datagram or the first bytes of a TCP stream that start
--               with the magic "CNBR" and version 1 (then the whole TCP conversation is canbridge)
--   cannelloni  cannelloni (wire-formats 2a): UDP and TCP (with the "CANNELLONIv1" banner),
--               default port 20000, plus a UDP heuristic (len >= 5, version 2, op 0, count consistent)
--
-- Each CAN frame is also handed to Wireshark's own SocketCAN dissectors ("can-hostendian" for
-- classic frames, "canfd" for CAN FD), so the usual can.id / can.len / can.flags.* fields and the
-- CAN subdissectors work. Those expect the Linux struct in host byte order; this script builds it
-- little-endian (x86, ARM: every host Wireshark runs on in practice).
--
-- Use:  tshark -X lua_script:canbridge.lua -r cap.pcapng -Y canbridge
-- or copy this file to ~/.local/lib/wireshark/plugins/. Ports: Preferences > Protocols > CANBRIDGE /
-- CANNELLONI, or "Decode As..." (tcp.port / udp.port). All lengths are checked against the packet:
-- malformed input shows an expert info, never a Lua error.

local PLUGIN_VERSION = "0.1.0"  -- the canbridge release (bridge.__version__)
if set_plugin_info then  -- Wireshark >= 3.0: shown in About > Plugins and `tshark -G plugins`
    set_plugin_info({
        version = PLUGIN_VERSION,
        description = "canbridge native protocol and cannelloni, with CAN frames for the SocketCAN dissectors",
        author = "canbridge developers",
        repository = "https://github.com/canbridge/canbridge",
    })
end

local NATIVE_PORT = 29600
local CANNELLONI_PORT = 20000
local MAX_RECORD_BODY = 1024

local can_dissector = Dissector.get("can-hostendian")
local canfd_dissector = Dissector.get("canfd")

local rec_types = { [1] = "HELLO", [2] = "FRAME", [3] = "HEARTBEAT", [4] = "TX_COUNT", [5] = "RX_COUNT" }

-- ------------------------------------------------------------------------------- shared helpers

-- Frames for the SocketCAN dissectors: struct can_frame (16 B) / canfd_frame (72 B) with the can_id
-- little-endian, queued while the records are dissected and handed over by flush_can() once the
-- packet's own dissection (and dissect_tcp_pdus' bookkeeping) is done: CAN heuristic subdissectors
-- (e.g. AUTOSAR NM on a 0-byte frame) throw on some payloads, and an exception inside a
-- dissect_tcp_pdus callback breaks the reassembly of the rest of the stream.
local can_queue = {}

-- tvb_id: the 4 big-endian can_id bytes; data_tvb may be nil.
local function call_can(tvb_id, len, fd_flags, len8_dlc, data_tvb, is_fd)
    local size = is_fd and 72 or 16
    local ba = ByteArray.new()
    ba:set_size(size)  -- zero filled
    for i = 0, 3 do ba:set_index(i, tvb_id:range(3 - i, 1):uint()) end
    ba:set_index(4, len)
    if is_fd then ba:set_index(5, fd_flags) else ba:set_index(7, len8_dlc) end
    if data_tvb ~= nil then
        for i = 0, data_tvb:len() - 1 do ba:set_index(8 + i, data_tvb:range(i, 1):uint()) end
    end
    table.insert(can_queue, { ba = ba, fd = is_fd })
end

local function flush_can(pinfo, tree)
    local queue = can_queue
    can_queue = {}
    for _, f in ipairs(queue) do
        local d = f.fd and canfd_dissector or can_dissector
        if d ~= nil then
            pcall(function() d:call(f.ba:tvb("CAN frame"), pinfo, tree) end)
        end
    end
end

local function add_can_id(tree, f, range)
    tree:add(f.can_id, range)
    tree:add(f.eff, range)
    tree:add(f.rtr, range)
    tree:add(f.err, range)
    tree:add(f.id, range)
end

local function id_text(can_id)
    if bit.band(can_id, 0x80000000) ~= 0 or bit.band(can_id, 0x20000000) ~= 0 then
        return string.format("%08X", bit.band(can_id, 0x3FFFFFFF))
    end
    return string.format("%03X", bit.band(can_id, 0x7FF))
end

-- Info column: what the packet held ("Preamble, HELLO, 3 x FRAME"), set once the CAN dissector
-- (which writes its own Info and Protocol) has run for every frame.
local summary = { order = {}, n = {} }

local function note(what)
    if summary.n[what] == nil then
        summary.n[what] = 0
        table.insert(summary.order, what)
    end
    summary.n[what] = summary.n[what] + 1
end

local function set_columns(pinfo, tree, proto_name, prefix)
    flush_can(pinfo, tree)
    local parts = {}
    for _, what in ipairs(summary.order) do
        local n = summary.n[what]
        table.insert(parts, n > 1 and string.format("%d x %s", n, what) or what)
    end
    pinfo.cols.protocol = proto_name
    pinfo.cols.info = (prefix or "") .. table.concat(parts, ", ") .. " "  -- TCP fences earlier PDUs: append
    summary = { order = {}, n = {} }
    can_queue = {}
end

-- ------------------------------------------------------------------------------- canbridge (native)

local p_native = Proto("canbridge", "canbridge native protocol")
local nf = {
    magic = ProtoField.string("canbridge.magic", "Magic"),
    version = ProtoField.uint8("canbridge.version", "Version"),
    flags = ProtoField.uint8("canbridge.flags", "Flags", base.HEX),
    session = ProtoField.uint32("canbridge.session", "Session", base.HEX),
    seq = ProtoField.uint32("canbridge.seq", "Sequence number"),
    rec_type = ProtoField.uint8("canbridge.record.type", "Record type", base.HEX, rec_types),
    rec_rflags = ProtoField.uint8("canbridge.record.rflags", "Record flags", base.HEX),
    rec_length = ProtoField.uint16("canbridge.record.length", "Body length"),
    rec_body = ProtoField.bytes("canbridge.record.body", "Body"),
    hello_version = ProtoField.uint8("canbridge.hello.proto_version", "Protocol version"),
    hello_caps = ProtoField.uint16("canbridge.hello.capabilities", "Capabilities", base.HEX),
    hello_cap_fd = ProtoField.bool("canbridge.hello.cap_fd", "CAN FD", 16, nil, 0x0001),
    hello_cap_err = ProtoField.bool("canbridge.hello.cap_err_frames", "Error frames", 16, nil, 0x0002),
    hello_hb = ProtoField.uint32("canbridge.hello.heartbeat_ms", "Heartbeat interval (ms)"),
    hello_nch = ProtoField.uint8("canbridge.hello.n_channels", "Channels"),
    hello_channel = ProtoField.string("canbridge.hello.channel", "Channel"),
    hb_sent = ProtoField.uint64("canbridge.heartbeat.sent_ns", "Sent (ns since epoch)"),
    tx_frames_sent = ProtoField.uint64("canbridge.tx_count.frames_sent", "Frames sent before this datagram"),
    rx_session = ProtoField.uint32("canbridge.rx_count.session", "Sender session acknowledged", base.HEX),
    rx_frames_accounted = ProtoField.uint64("canbridge.rx_count.frames_accounted",
                                            "Frames received or counted lost (sender's numbering)"),
    can_id = ProtoField.uint32("canbridge.can_id", "can_id", base.HEX),
    eff = ProtoField.bool("canbridge.eff", "EFF", 32, nil, 0x80000000),
    rtr = ProtoField.bool("canbridge.rtr", "RTR", 32, nil, 0x40000000),
    err = ProtoField.bool("canbridge.err", "ERR", 32, nil, 0x20000000),
    id = ProtoField.uint32("canbridge.id", "Identifier", base.HEX, nil, 0x1FFFFFFF),
    len = ProtoField.uint8("canbridge.len", "len"),
    fd_flags = ProtoField.uint8("canbridge.fd_flags", "fd_flags", base.HEX),
    brs = ProtoField.bool("canbridge.brs", "BRS", 8, nil, 0x01),
    esi = ProtoField.bool("canbridge.esi", "ESI", 8, nil, 0x02),
    fdf = ProtoField.bool("canbridge.fdf", "FDF", 8, nil, 0x04),
    len8_dlc = ProtoField.uint8("canbridge.len8_dlc", "len8_dlc"),
    channel = ProtoField.uint8("canbridge.channel", "Channel"),
    timestamp = ProtoField.uint64("canbridge.timestamp_ns", "Timestamp (ns since epoch)"),
    data = ProtoField.bytes("canbridge.data", "Data"),
}
p_native.fields = nf
local ne_malformed = ProtoExpert.new("canbridge.malformed", "Malformed canbridge record",
    expert.group.MALFORMED, expert.severity.ERROR)
p_native.experts = { ne_malformed }
p_native.prefs.tcp_ports = Pref.range("TCP ports", tostring(NATIVE_PORT), "TCP ports of canbridge", 65535)
p_native.prefs.udp_ports = Pref.range("UDP ports", tostring(NATIVE_PORT), "UDP ports of canbridge", 65535)
p_native.prefs.heuristic = Pref.bool("Heuristic (any port)", true,
    "Recognise canbridge on any TCP or UDP port by its magic CNBR and version 1")
p_native.prefs.call_can = Pref.bool("Call the CAN dissector", true,
    "Hand each frame to Wireshark's SocketCAN dissector (can.* fields)")

-- One record at tvb(offset); returns the number of frames it held (0 or 1).
-- A record whose body has one fixed length: flag any other length as malformed (and show its bytes).
local function fixed_body(tvb, t, b, blen, want, name)
    if blen == want then return true end
    t:add_proto_expert_info(ne_malformed, string.format("%s body != %d bytes", name, want))
    if blen > 0 then t:add(nf.rec_body, tvb(b, blen)) end
    return false
end

local function native_record(tvb, offset, pinfo, tree)
    local rtype = tvb(offset, 1):uint()
    local blen = tvb(offset + 2, 2):uint()
    local rec = tvb(offset, 4 + blen)
    local t = tree:add(p_native, rec, (rec_types[rtype] or "Unknown record") .. string.format(" (%d bytes)", blen))
    note(rec_types[rtype] or "Unknown record")
    t:add(nf.rec_type, tvb(offset, 1))
    t:add(nf.rec_rflags, tvb(offset + 1, 1))
    t:add(nf.rec_length, tvb(offset + 2, 2))
    local b = offset + 4
    if blen > MAX_RECORD_BODY then
        t:add_proto_expert_info(ne_malformed, "record body > 1024 bytes")
        return 0
    end
    if rtype == 2 then
        if blen < 16 then
            t:add_proto_expert_info(ne_malformed, "FRAME body < 16 bytes")
            return 0
        end
        local can_id = tvb(b, 4):uint()
        local n = tvb(b + 4, 1):uint()
        local fdf = tvb(b + 5, 1):uint()
        add_can_id(t, nf, tvb(b, 4))
        t:add(nf.len, tvb(b + 4, 1))
        local ft = t:add(nf.fd_flags, tvb(b + 5, 1))
        ft:add(nf.brs, tvb(b + 5, 1))
        ft:add(nf.esi, tvb(b + 5, 1))
        ft:add(nf.fdf, tvb(b + 5, 1))
        t:add(nf.len8_dlc, tvb(b + 6, 1))
        t:add(nf.channel, tvb(b + 7, 1))
        t:add(nf.timestamp, tvb(b + 8, 8))
        local dl = blen - 16
        local data = nil
        if dl > 0 then
            data = tvb(b + 16, dl)
            t:add(nf.data, data)
        end
        local is_fd = bit.band(fdf, 0x04) ~= 0
        local rtr = bit.band(can_id, 0x40000000) ~= 0
        local want = rtr and 0 or n
        if n > 64 or (not is_fd and n > 8) or dl ~= want then
            t:add_proto_expert_info(ne_malformed, "FRAME len / body length mismatch")
            return 0
        end
        t:append_text(string.format(": %s [%d] ch %d", id_text(can_id), n, tvb(b + 7, 1):uint()))
        if p_native.prefs.call_can then
            call_can(tvb(b, 4), n, fdf, tvb(b + 6, 1):uint(), data, is_fd)
        end
        return 1
    elseif rtype == 1 then
        if blen < 9 then
            t:add_proto_expert_info(ne_malformed, "HELLO body < 9 bytes")
            return 0
        end
        t:add(nf.hello_version, tvb(b, 1))
        local ct = t:add(nf.hello_caps, tvb(b + 2, 2))
        ct:add(nf.hello_cap_fd, tvb(b + 2, 2))
        ct:add(nf.hello_cap_err, tvb(b + 2, 2))
        t:add(nf.hello_hb, tvb(b + 4, 4))
        t:add(nf.hello_nch, tvb(b + 8, 1))
        local p = b + 9
        for _ = 1, tvb(b + 8, 1):uint() do
            if p >= b + blen then
                t:add_proto_expert_info(ne_malformed, "channel list runs past the body")
                break
            end
            local nl = tvb(p, 1):uint()
            if p + 1 + nl > b + blen then
                t:add_proto_expert_info(ne_malformed, "channel name runs past the body")
                break
            end
            t:add(nf.hello_channel, tvb(p + 1, nl))
            p = p + 1 + nl
        end
    elseif rtype == 3 then
        if blen < 8 then
            t:add_proto_expert_info(ne_malformed, "HEARTBEAT body < 8 bytes")
            return 0
        end
        t:add(nf.hb_sent, tvb(b, 8))
    elseif rtype == 4 then
        if not fixed_body(tvb, t, b, blen, 8, "TX_COUNT") then return 0 end  -- docs/protocol.md 4.5
        t:add(nf.tx_frames_sent, tvb(b, 8))
        t:append_text(": frames_sent " .. tostring(tvb(b, 8):uint64()))
    elseif rtype == 5 then
        if not fixed_body(tvb, t, b, blen, 12, "RX_COUNT") then return 0 end  -- docs/protocol.md 4.6
        t:add(nf.rx_session, tvb(b, 4))
        t:add(nf.rx_frames_accounted, tvb(b + 4, 8))
        t:append_text(string.format(": session 0x%08x, frames_accounted ", tvb(b, 4):uint())
                      .. tostring(tvb(b + 4, 8):uint64()))
    elseif blen > 0 then
        t:add(nf.rec_body, tvb(b, blen))
    end
    return 0
end

-- Records back to back in tvb(offset) .. end; returns the frame count.
local function native_records(tvb, offset, pinfo, tree)
    local frames = 0
    while offset < tvb:len() do
        if tvb:len() - offset < 4 or offset + 4 + tvb(offset + 2, 2):uint() > tvb:len() then
            tree:add_proto_expert_info(ne_malformed, "record runs past the end of the datagram")
            break
        end
        frames = frames + native_record(tvb, offset, pinfo, tree)
        offset = offset + 4 + tvb(offset + 2, 2):uint()
    end
    return frames
end

local function native_udp(tvb, pinfo, tree)
    if tvb:len() < 14 or tvb(0, 4):string() ~= "CNBR" then return 0 end
    summary = { order = {}, n = {} }
    can_queue = {}
    local t = tree:add(p_native, tvb(), "canbridge UDP datagram")
    t:add(nf.magic, tvb(0, 4))
    t:add(nf.version, tvb(4, 1))
    t:add(nf.flags, tvb(5, 1))
    t:add(nf.session, tvb(6, 4))
    t:add(nf.seq, tvb(10, 4))
    native_records(tvb, 14, pinfo, t)
    set_columns(pinfo, tree, "canbridge", string.format("session %08x seq %d: ", tvb(6, 4):uint(), tvb(10, 4):uint()))
    return tvb:len()
end

-- TCP PDUs: the 6-byte preamble ("CNBR" + version 1) or one record
local function native_pdu_len(tvb, pinfo, offset)
    if tvb(offset, 4):string() == "CNBR" then return 6 end
    return 4 + tvb(offset + 2, 2):uint()
end

local function native_pdu(tvb, pinfo, tree)
    if tvb:len() == 6 and tvb(0, 4):string() == "CNBR" then
        local t = tree:add(p_native, tvb(), "canbridge TCP preamble")
        t:add(nf.magic, tvb(0, 4))
        t:add(nf.version, tvb(4, 1))
        t:add(nf.flags, tvb(5, 1))
        note("Preamble")
        return 6
    end
    native_record(tvb, 0, pinfo, tree)
    return tvb:len()
end

local function native_tcp(tvb, pinfo, tree)
    summary = { order = {}, n = {} }
    can_queue = {}
    dissect_tcp_pdus(tvb, tree, 4, native_pdu_len, native_pdu, true)
    set_columns(pinfo, tree, "canbridge")
    return tvb:len()
end

function p_native.dissector(tvb, pinfo, tree)
    if pinfo.port_type == 3 then  -- PT_UDP (epan/address.h: PT_NONE, PT_SCTP, PT_TCP, PT_UDP)
        return native_udp(tvb, pinfo, tree)
    end
    return native_tcp(tvb, pinfo, tree)
end

-- ------------------------------------------------------------------------------- cannelloni

local p_cnl = Proto("cannelloni", "cannelloni CAN over IP")
local cf = {
    version = ProtoField.uint8("cannelloni.version", "Version"),
    op_code = ProtoField.uint8("cannelloni.op_code", "Op code", base.DEC, { [0] = "DATA", [1] = "ACK", [2] = "NACK" }),
    seq = ProtoField.uint8("cannelloni.seq", "Sequence number"),
    count = ProtoField.uint16("cannelloni.count", "Frame count"),
    banner = ProtoField.string("cannelloni.banner", "Banner"),
    can_id = ProtoField.uint32("cannelloni.can_id", "can_id", base.HEX),
    eff = ProtoField.bool("cannelloni.eff", "EFF", 32, nil, 0x80000000),
    rtr = ProtoField.bool("cannelloni.rtr", "RTR", 32, nil, 0x40000000),
    err = ProtoField.bool("cannelloni.err", "ERR", 32, nil, 0x20000000),
    id = ProtoField.uint32("cannelloni.id", "Identifier", base.HEX, nil, 0x1FFFFFFF),
    fd = ProtoField.bool("cannelloni.fd", "CAN FD", 8, nil, 0x80),
    len = ProtoField.uint8("cannelloni.len", "len", base.DEC, nil, 0x7F),
    fd_flags = ProtoField.uint8("cannelloni.fd_flags", "fd_flags", base.HEX),
    brs = ProtoField.bool("cannelloni.brs", "BRS", 8, nil, 0x01),
    esi = ProtoField.bool("cannelloni.esi", "ESI", 8, nil, 0x02),
    fdf = ProtoField.bool("cannelloni.fdf", "FDF", 8, nil, 0x04),
    data = ProtoField.bytes("cannelloni.data", "Data"),
}
p_cnl.fields = cf
local ce_malformed = ProtoExpert.new("cannelloni.malformed", "Malformed cannelloni frame",
    expert.group.MALFORMED, expert.severity.ERROR)
p_cnl.experts = { ce_malformed }
p_cnl.prefs.tcp_ports = Pref.range("TCP ports", tostring(CANNELLONI_PORT), "TCP ports of cannelloni", 65535)
p_cnl.prefs.udp_ports = Pref.range("UDP ports", tostring(CANNELLONI_PORT), "UDP ports of cannelloni", 65535)
p_cnl.prefs.heuristic = Pref.bool("UDP heuristic", true, "Try cannelloni on every UDP datagram")
p_cnl.prefs.call_can = Pref.bool("Call the CAN dissector", true,
    "Hand each frame to Wireshark's SocketCAN dissector (can.* fields)")

-- Length of the frame record at tvb(offset), or nil if fewer than 5 bytes are there.
local function cnl_record_len(tvb, offset)
    if tvb:len() - offset < 5 then return nil end
    local rtr = bit.band(tvb(offset, 4):uint(), 0x40000000) ~= 0
    local l = tvb(offset + 4, 1):uint()
    local n = 5
    if bit.band(l, 0x80) ~= 0 then n = n + 1 end
    if not rtr then n = n + bit.band(l, 0x7F) end
    return n
end

-- One frame record (complete: checked by the caller) at tvb(offset); returns its length.
local function cnl_record(tvb, offset, pinfo, tree)
    local rlen = cnl_record_len(tvb, offset)
    local t = tree:add(p_cnl, tvb(offset, rlen), "Frame")
    local can_id = tvb(offset, 4):uint()
    local l = tvb(offset + 4, 1):uint()
    local is_fd = bit.band(l, 0x80) ~= 0
    local n = bit.band(l, 0x7F)
    add_can_id(t, cf, tvb(offset, 4))
    t:add(cf.fd, tvb(offset + 4, 1))
    t:add(cf.len, tvb(offset + 4, 1))
    local p = offset + 5
    local fl = 0
    if is_fd then
        fl = tvb(p, 1):uint()
        local ft = t:add(cf.fd_flags, tvb(p, 1))
        ft:add(cf.brs, tvb(p, 1))
        ft:add(cf.esi, tvb(p, 1))
        ft:add(cf.fdf, tvb(p, 1))
        p = p + 1
    end
    local data = nil
    if p < offset + rlen then
        data = tvb(p, offset + rlen - p)
        t:add(cf.data, data)
    end
    t:append_text(string.format(": %s [%d]", id_text(can_id), n))
    note("Frame")
    if n > 64 or (not is_fd and n > 8) then
        t:add_proto_expert_info(ce_malformed, "len too large")
    elseif p_cnl.prefs.call_can then
        call_can(tvb(offset, 4), n, bit.bor(bit.band(fl, 0x03), 0x04), 0, data, is_fd)
    end
    return rlen
end

local function cnl_udp(tvb, pinfo, tree)
    if tvb:len() < 5 then return 0 end
    summary = { order = {}, n = {} }
    can_queue = {}
    local t = tree:add(p_cnl, tvb(), "cannelloni UDP datagram")
    t:add(cf.version, tvb(0, 1))
    t:add(cf.op_code, tvb(1, 1))
    t:add(cf.seq, tvb(2, 1))
    t:add(cf.count, tvb(3, 2))
    local count = tvb(3, 2):uint()
    local offset = 5
    local done = 0
    while done < count do
        local rlen = cnl_record_len(tvb, offset)
        if rlen == nil or offset + rlen > tvb:len() then
            t:add_proto_expert_info(ce_malformed, string.format("%d of %d frames, then the datagram ends", done, count))
            break
        end
        cnl_record(tvb, offset, pinfo, t)
        offset = offset + rlen
        done = done + 1
    end
    set_columns(pinfo, tree, "cannelloni", string.format("seq %d: ", tvb(2, 1):uint()))
    return tvb:len()
end

-- Heuristic: len >= 5, version 2, op DATA, count >= 1 records that end exactly at the datagram end.
local function cnl_heuristic(tvb, pinfo, tree)
    if tvb:len() < 5 or tvb(0, 1):uint() ~= 2 or tvb(1, 1):uint() ~= 0 then return false end
    local count = tvb(3, 2):uint()
    if count == 0 then return false end
    local offset = 5
    for _ = 1, count do
        local rlen = cnl_record_len(tvb, offset)
        if rlen == nil or offset + rlen > tvb:len() or bit.band(tvb(offset + 4, 1):uint(), 0x7F) > 64 then
            return false
        end
        offset = offset + rlen
    end
    if offset ~= tvb:len() then return false end
    cnl_udp(tvb, pinfo, tree)
    return true
end

local function cnl_pdu_len(tvb, pinfo, offset)
    if tvb(offset, 4):string() == "CANN" then return 12 end
    return cnl_record_len(tvb, offset)
end

local function cnl_pdu(tvb, pinfo, tree)
    if tvb:len() == 12 and tvb(0, 12):string() == "CANNELLONIv1" then
        tree:add(p_cnl, tvb(), "cannelloni TCP banner"):add(cf.banner, tvb())
        note("Banner")
        return 12
    end
    cnl_record(tvb, 0, pinfo, tree)
    return tvb:len()
end

function p_cnl.dissector(tvb, pinfo, tree)
    if pinfo.port_type == 3 then return cnl_udp(tvb, pinfo, tree) end
    summary = { order = {}, n = {} }
    can_queue = {}
    dissect_tcp_pdus(tvb, tree, 5, cnl_pdu_len, cnl_pdu, true)
    set_columns(pinfo, tree, "cannelloni")
    return tvb:len()
end

-- ------------------------------------------------------------------------------- registration

local tcp_table = DissectorTable.get("tcp.port")
local udp_table = DissectorTable.get("udp.port")
local registered = {}  -- proto name -> { tcp = range string, udp = range string }

local function register_ports(proto)
    local old = registered[proto.name]
    if old ~= nil then
        if old.tcp ~= "" then tcp_table:remove(old.tcp, proto) end
        if old.udp ~= "" then udp_table:remove(old.udp, proto) end
    end
    local tcp, udp = proto.prefs.tcp_ports, proto.prefs.udp_ports
    if tcp ~= "" then tcp_table:add(tcp, proto) end
    if udp ~= "" then udp_table:add(udp, proto) end
    registered[proto.name] = { tcp = tcp, udp = udp }
end

for _, proto in ipairs({ p_native, p_cnl }) do
    tcp_table:add_for_decode_as(proto)
    udp_table:add_for_decode_as(proto)
    register_ports(proto)
    proto.prefs_changed = function() register_ports(proto) end
end

p_cnl:register_heuristic("udp", function(tvb, pinfo, tree)
    return p_cnl.prefs.heuristic and cnl_heuristic(tvb, pinfo, tree)
end)

-- canbridge on any port: the magic "CNBR" and version 1 start every UDP datagram and every TCP stream
-- (the preamble). A TCP match makes the conversation canbridge, so the stream's later segments (records
-- without the magic) come to p_native too.
local function native_magic(tvb, min_len)
    return tvb:len() >= min_len and tvb(0, 4):string() == "CNBR" and tvb(4, 1):uint() == 1
end

p_native:register_heuristic("udp", function(tvb, pinfo, tree)
    if not (p_native.prefs.heuristic and native_magic(tvb, 14)) then return false end
    native_udp(tvb, pinfo, tree)
    return true
end)

p_native:register_heuristic("tcp", function(tvb, pinfo, tree)
    if not (p_native.prefs.heuristic and native_magic(tvb, 6)) then return false end
    pinfo.conversation = p_native
    native_tcp(tvb, pinfo, tree)
    return true
end)
