/**
 * X keysyms (what RFB KeyEvents carry) to Linux key codes on a US keyboard, the layout Linux's
 * console starts with. A printable character that needs Shift on that layout ("A", "!", ">") says
 * so, and the VNC server presses Shift around it when the client does not hold Shift itself.
 */

export interface KeyMapping {
  code: number;
  shift: boolean;
}

export const KEY_LEFTSHIFT = 42;
export const KEY_RIGHTSHIFT = 54;

/** The unshifted and shifted characters of each key of the US layout's printable rows. */
const PRINTABLE: [number, string, string][] = [
  [2, "1", "!"],
  [3, "2", "@"],
  [4, "3", "#"],
  [5, "4", "$"],
  [6, "5", "%"],
  [7, "6", "^"],
  [8, "7", "&"],
  [9, "8", "*"],
  [10, "9", "("],
  [11, "0", ")"],
  [12, "-", "_"],
  [13, "=", "+"],
  [16, "q", "Q"],
  [17, "w", "W"],
  [18, "e", "E"],
  [19, "r", "R"],
  [20, "t", "T"],
  [21, "y", "Y"],
  [22, "u", "U"],
  [23, "i", "I"],
  [24, "o", "O"],
  [25, "p", "P"],
  [26, "[", "{"],
  [27, "]", "}"],
  [30, "a", "A"],
  [31, "s", "S"],
  [32, "d", "D"],
  [33, "f", "F"],
  [34, "g", "G"],
  [35, "h", "H"],
  [36, "j", "J"],
  [37, "k", "K"],
  [38, "l", "L"],
  [39, ";", ":"],
  [40, "'", '"'],
  [41, "`", "~"],
  [43, "\\", "|"],
  [44, "z", "Z"],
  [45, "x", "X"],
  [46, "c", "C"],
  [47, "v", "V"],
  [48, "b", "B"],
  [49, "n", "N"],
  [50, "m", "M"],
  [51, ",", "<"],
  [52, ".", ">"],
  [53, "/", "?"],
  [57, " ", " "],
];

/** Keysyms of the function and modifier keys (X11 keysymdef.h) and their Linux codes. */
const SPECIAL: [number, number][] = [
  [0xff08, 14], // BackSpace
  [0xff09, 15], // Tab
  [0xfe20, 15], // ISO_Left_Tab (Shift+Tab)
  [0xff0d, 28], // Return
  [0xff1b, 1], // Escape
  [0xff13, 119], // Pause
  [0xff14, 70], // Scroll_Lock
  [0xff15, 99], // Sys_Req
  [0xff50, 102], // Home
  [0xff51, 105], // Left
  [0xff52, 103], // Up
  [0xff53, 106], // Right
  [0xff54, 108], // Down
  [0xff55, 104], // Page_Up
  [0xff56, 109], // Page_Down
  [0xff57, 107], // End
  [0xff61, 99], // Print
  [0xff63, 110], // Insert
  [0xff67, 127], // Menu
  [0xff7f, 69], // Num_Lock
  [0xff8d, 96], // KP_Enter
  [0xffaa, 55], // KP_Multiply
  [0xffab, 78], // KP_Add
  [0xffad, 74], // KP_Subtract
  [0xffae, 83], // KP_Decimal
  [0xffaf, 98], // KP_Divide
  [0xffb0, 82], // KP_0
  [0xffb1, 79],
  [0xffb2, 80],
  [0xffb3, 81],
  [0xffb4, 75],
  [0xffb5, 76],
  [0xffb6, 77],
  [0xffb7, 71],
  [0xffb8, 72],
  [0xffb9, 73], // KP_9
  [0xffe1, KEY_LEFTSHIFT], // Shift_L
  [0xffe2, KEY_RIGHTSHIFT], // Shift_R
  [0xffe3, 29], // Control_L
  [0xffe4, 97], // Control_R
  [0xffe5, 58], // Caps_Lock
  [0xffe7, 125], // Meta_L
  [0xffe8, 126], // Meta_R
  [0xffe9, 56], // Alt_L
  [0xffea, 100], // Alt_R
  [0xffeb, 125], // Super_L
  [0xffec, 126], // Super_R
  [0xfe03, 100], // ISO_Level3_Shift (AltGr)
  [0xffff, 111], // Delete
];
// F1..F10 are 59..68, F11 and F12 87 and 88.
for (let i = 0; i < 12; i++) SPECIAL.push([0xffbe + i, i < 10 ? 59 + i : 87 + (i - 10)]);

const TABLE: ReadonlyMap<number, KeyMapping> = (() => {
  const m = new Map<number, KeyMapping>();
  for (const [code, plain, shifted] of PRINTABLE) {
    m.set(plain.charCodeAt(0), { code, shift: false });
    if (shifted !== plain) m.set(shifted.charCodeAt(0), { code, shift: true });
  }
  for (const [sym, code] of SPECIAL) m.set(sym, { code, shift: false });
  return m;
})();

/** The key a keysym is typed with, or undefined for a keysym the US layout has no key for. */
export function keysymToKey(keysym: number): KeyMapping | undefined {
  return TABLE.get(keysym >>> 0);
}
